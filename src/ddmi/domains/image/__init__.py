"""domains/image"""
