"""Front-ends over scene_kd."""
