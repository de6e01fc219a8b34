"""scene_kd.render"""
