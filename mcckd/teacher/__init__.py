"""Teacher rationales: `mcckd generate` (generate.py) through an OpenAI-compatible server
(client.py) or a local transformers model."""
