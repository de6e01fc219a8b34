"""scene_kd.scene"""
