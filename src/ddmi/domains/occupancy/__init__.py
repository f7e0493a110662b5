"""domains/occupancy"""
