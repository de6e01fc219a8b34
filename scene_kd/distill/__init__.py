"""scene_kd.distill"""
