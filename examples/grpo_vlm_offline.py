"""TRL's VLM GRPO example (trl/examples/scripts/grpo_vlm.py), made offline, on vlmgrpo.

The one change for vlmgrpo is the import of GRPOConfig and GRPOTrainer. The offline changes:
the arguments are set here instead of parsed by TrlParser (a plain namespace stands in for TRL's
ModelConfig, and a peft LoraConfig for get_peft_config: importing those from trl takes ~13 s);
the dataset is a small `datasets.Dataset` of PIL images with `problem` / `solution` columns (no
Hub download); the accuracy reward is a short math-verify one of our own that returns None when
it cannot parse. `think_format_reward` is the real one from the `trl` package.

    python examples/grpo_vlm_offline.py MODEL_DIR OUTPUT_DIR [--peft]

MODEL_DIR: e.g. a tiny Qwen2.5-VL from `vlmgrpo tiny-model --arch qwen2_5_vl --out tiny/`.
"""

import sys
from types import SimpleNamespace

import torch
from datasets import Dataset
from math_verify import parse, verify
from peft import LoraConfig
from PIL import Image, ImageDraw
from trl.rewards import think_format_reward

from vlmgrpo import GRPOConfig, GRPOTrainer  # was: from trl import GRPOConfig, GRPOTrainer


def tiny_geometry_set(n: int = 12) -> Dataset:
    """n problems, each with a drawing of k squares; the answer is k."""
    images, problems, solutions = [], [], []
    for i in range(n):
        k = 1 + i % 4
        img = Image.new("RGB", (64, 48), "white")
        draw = ImageDraw.Draw(img)
        for j in range(k):
            draw.rectangle([4 + 14 * j, 16, 14 + 14 * j, 26], fill="blue")
        images.append(img)
        problems.append("How many blue squares are in the picture?")
        solutions.append(f"${k}$")
    return Dataset.from_dict({"image": images, "problem": problems, "solution": solutions})


if __name__ == "__main__":
    model_dir, output_dir = sys.argv[1], sys.argv[2]
    model_args = SimpleNamespace(
        model_name_or_path=model_dir, model_revision="main", attn_implementation=None, dtype="float32"
    )
    peft_config = (
        LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]) if "--peft" in sys.argv else None
    )
    training_args = GRPOConfig(
        output_dir=output_dir,
        learning_rate=1e-5,
        max_completion_length=12,
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        save_steps=1,
        logging_steps=1,
        log_completions=True,
        report_to="none",
        use_cpu=True,
    )
    ################
    # Model & Processor
    ################
    dtype = model_args.dtype if model_args.dtype in ["auto", None] else getattr(torch, model_args.dtype)
    training_args.model_init_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=dtype,
    )

    ################
    # Dataset
    ################
    dataset = tiny_geometry_set().train_test_split(test_size=4, seed=42)

    SYSTEM_PROMPT = (
        "A conversation between user and assistant. The assistant first thinks about the reasoning "
        "process in <think></think> tags and then gives the answer."
    )

    def make_conversation(example):
        prompt = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": example["problem"]},
        ]
        return {"prompt": prompt}

    dataset = dataset.map(make_conversation)
    dataset = dataset.filter(
        lambda example: example["image"].size[0] < 512 and example["image"].size[1] < 512
    )
    train_dataset = dataset["train"]
    eval_dataset = dataset["test"] if training_args.eval_strategy != "no" else None

    ################
    # Reward Function for Training
    ################
    def accuracy_reward(completions, solution: list[str], **kwargs):
        """1.0 when math-verify finds the completion equal to the solution, 0.0 when not, None when
        either side cannot be parsed (the sample is then scored by the other rewards only)."""
        scores = []
        for completion, sol in zip(completions, solution):
            gold, answer = parse(sol), parse(completion[0]["content"])
            scores.append(float(verify(gold, answer)) if gold and answer else None)
        return scores

    ################
    # Training
    ################
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        reward_funcs=[think_format_reward, accuracy_reward],
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=peft_config,
    )

    trainer.train()

    trainer.save_model(training_args.output_dir)
