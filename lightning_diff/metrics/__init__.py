"""Measurements of generated samples: copying (memorization), and more to come."""
