"""domains/video"""
