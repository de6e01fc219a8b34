"""apps.viewer"""
