"""Datasets: the embedded procedural world, image folders, splits and views."""
