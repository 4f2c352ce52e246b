"""What the data is: npy headers, tile geometry, the index layout, and reads."""
