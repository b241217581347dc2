"""HellaSwag accuracy of one of our checkpoints or a Hugging Face causal LM (gpt/hellaswag/).

python hellaswag.py -m RUN/checkpoints/best --data hellaswag_val.jsonl
python hellaswag.py -m gpt2 --limit 1000 --output results.json
"""

from gpt.cli import run
from gpt.hellaswag.score import main

if __name__ == "__main__":
    run(main)
