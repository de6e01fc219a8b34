"""scene_kd.lift"""
