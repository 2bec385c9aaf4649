"""Models: loading any Hugging Face causal LM, and the tiny from-scratch preset."""
