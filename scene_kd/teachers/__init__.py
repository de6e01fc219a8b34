"""scene_kd.teachers"""
