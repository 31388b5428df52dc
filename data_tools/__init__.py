"""Data before training: the demo data set, format converters and the labeling tool (never trains)."""
