"""A program that exits right after its last reply exits cleanly, with the decode thread still busy in torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# After its last reply the decode thread spends ~1 s in torch calls (as it does when it retires a row or
# frees a dropped engine), and the main thread returns at once. Python finalizing under a daemon thread that is
# inside C++ code kills it mid-call: "terminate called without an active exception", exit status 134.
SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from agent.llm.engine import TransformersLLM
    from agent.llm.scheduler import Scheduler
    from agent.types import LLMRequest, Message

    torch.set_num_threads(1)
    big = torch.randn(1400, 1400)
    keep = Scheduler._keep

    def slow_keep(self, rows):
        keep(self, rows)
        if not rows:
            for _ in range(3):
                torch.mm(big, big)

    Scheduler._keep = slow_keep
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    llm = TransformersLLM(LlamaForCausalLM(config).eval(), AutoTokenizer.from_pretrained(sys.argv[1]),
                          constrained=False)
    reply = llm.complete(LLMRequest("answer", (Message("user", "Hi."),), max_new_tokens=4))
    print("replied", reply.usage.completion_tokens, flush=True)
""")


def test_exit_right_after_a_reply_waits_for_the_decode_thread(bundled_dir: Path) -> None:
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(bundled_dir)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "replied 4" in done.stdout and "terminate called" not in done.stderr
