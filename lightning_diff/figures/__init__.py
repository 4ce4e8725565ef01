"""Pictures for people: image grids (samples, nearest neighbours, the study) and the theory plots."""
