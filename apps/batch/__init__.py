"""apps.batch"""
