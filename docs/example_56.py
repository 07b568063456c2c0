from fastervlm.flops import LLMGeometry, prefill_flops
from fastervlm.methods import create_pruner

# Video-LLaVA-7B's LLM; a LlamaConfig or a VLM config (its text_config is used) works the same
llm_config = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "vocab_size": 32000}
geometry = LLMGeometry.from_config(llm_config)
text_tokens, frames, num_patches = 60, 8, 256
unpruned = prefill_flops(geometry, text_tokens + frames * num_patches)     # every layer sees the whole prompt

print("| reduction | # Token | FasterVLM TFLOPs | FastV (K = 2) TFLOPs |")
for reduction in (0, 0.5, 0.75, 0.9, 0.95):
    cells = []
    for method in ("fastervlm", "fastv"):
        pruner = create_pruner(method, reduction=reduction)
        flops = pruner.llm_prefill_flops(geometry, text_tokens=text_tokens, frames=frames, num_patches=num_patches)
        cells.append(f"{flops / 1e12:.1f} ({flops / unpruned:.1%})")
    tokens = create_pruner("fastervlm", reduction=reduction).kept_visual_tokens(frames, num_patches)
    print(f"| {reduction:.0%} | {tokens} | {cells[0]} | {cells[1]} |")
