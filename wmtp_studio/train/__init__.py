"""The training engine: a leaf that reads a run directory's recipe.json and writes only files into it."""
