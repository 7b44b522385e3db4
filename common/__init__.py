"""Torch-free helpers shared by workers, driver, dashboard and slim tools: annotations, RLE, registries, preprocessing."""
