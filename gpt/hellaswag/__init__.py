"""HellaSwag: the data (download, validation) and the scoring of our models and Hugging Face
models (packing, scoring through the model's forward)."""
