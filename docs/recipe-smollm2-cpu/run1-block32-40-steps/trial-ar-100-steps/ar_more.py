"""Continue the smollm2-cpu AR teacher (40 LoRA steps, merged) for 60 more LoRA steps; score it on the same 200 test users."""
import json, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from dgr2_trl.recipe.presets import get_preset
from dgr2_trl.recipe.stages import data_settings, lora_config, trained_model, common_args
from dgr2_trl.data import build_rerank_datasets
from dgr2_trl.evaluation import evaluate_reranker
from dgr2_trl.samplers import ARSampler
p = get_preset("smollm2-cpu", seed=1)  # a different data order than the first 40 steps
d = build_rerank_datasets(**data_settings(p), max_eval_queries=p.max_eval_queries)
tok = AutoTokenizer.from_pretrained("/work/runs/smollm2-cpu/ar")
model = AutoModelForCausalLM.from_pretrained("/work/runs/smollm2-cpu/ar")
args = common_args(p, "/tmp/s/ar_more", 60, 5e-4); args["per_device_train_batch_size"] = 8
t = time.perf_counter()
trainer = SFTTrainer(model, args=SFTConfig(**args, max_length=2048), train_dataset=d.train, processing_class=tok, peft_config=lora_config(p))
trainer.train()
train_s = time.perf_counter() - t
model = trained_model(trainer).eval()
r = evaluate_reranker(ARSampler(model, tok), d.test, max_new_tokens=p.max_new_tokens, batch_size=32, return_rows=True)
rows = r.pop("rows")
r["train_seconds"] = train_s
json.dump(r, open("/tmp/s/ar_more_metrics.json", "w"), indent=2, default=float)
with open("/tmp/s/ar_more_rows.jsonl", "w") as f:
    for row in rows: f.write(json.dumps({"text": row["text"], "ranking": row["ranking"], "valid": row["valid"]}) + "\n")
print({k: r[k] for k in ("recall@1", "recall@3", "ndcg@3", "valid_rate", "copies_floor_rate", "num_distinct_texts", "n")})
