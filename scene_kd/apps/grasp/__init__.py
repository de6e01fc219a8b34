"""apps.grasp"""
