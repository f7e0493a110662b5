"""domains/nerf"""
