"""scene_kd.eval"""
