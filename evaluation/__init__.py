"""The privacy and image-quality evaluation of cancelable faces (python -m evaluation)."""
