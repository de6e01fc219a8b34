"""scene_kd.query"""
