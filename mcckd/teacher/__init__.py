"""Teacher rationales: `mcckd generate` (generate.py) through an OpenAI-compatible server or a
local transformers model. The server clients (client.py), the bounded pool of requests
(pool.py) and their command-line options (options.py) serve `mcckd eval --endpoint` too."""
