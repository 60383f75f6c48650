"""The fixed part of the torchtitan config registry that `flmplan export --to torchtitan` writes
(planner/export/torchtitan.py adds a docstring and one config function per stage). torchtitan 0.3.0; this
file is package data, imported only by torchtitan when it loads the exported module."""

import os
from functools import partial

import torch.nn as nn
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.components.optimizer import LRSchedulersContainer, OptimizersContainer, ParamGroupConfig
from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC
from torchtitan.distributed.pipeline_parallel import pipeline_llm
from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader
from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
from torchtitan.models.common.config_utils import get_attention_config, make_ffn_config, make_gqa_config
from torchtitan.models.llama3 import parallelize_llama
from torchtitan.models.llama3.model import Llama3Model, Llama3TransformerBlock
from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter
from torchtitan.protocols.model_spec import ModelSpec
from torchtitan.trainer import Trainer

_LINEAR = {"weight": partial(nn.init.trunc_normal_, std=0.02), "bias": nn.init.zeros_}
_NORM = {"weight": nn.init.ones_}


def _model(flavor, *, layers, dim, heads, kv_heads, ffn, vocab, seq, tied, norm_eps=1e-5):
    """The stage's decoder in torchtitan's llama3 architecture (RMSNorm, SwiGLU, rotary); a grown stage's
    RMSNorm ε shrinks with its width, which keeps `flmplan grow`'s growth exact."""
    rope = ComplexRoPE.Config(dim=dim // heads, max_seq_len=seq, theta=10000.0, scaling="none")
    blocks = [
        Llama3TransformerBlock.Config(
            attention_norm=RMSNorm.Config(normalized_shape=dim, param_init=_NORM, eps=norm_eps),
            ffn_norm=RMSNorm.Config(normalized_shape=dim, param_init=_NORM, eps=norm_eps),
            attention=make_gqa_config(dim=dim, n_heads=heads, n_kv_heads=kv_heads, wqkv_param_init=_LINEAR,
                                      wo_param_init=_LINEAR, inner_attention=get_attention_config("flex"),
                                      fuse_qkv=True, rope=rope),
            feed_forward=make_ffn_config(dim=dim, hidden_dim=ffn, w1_param_init=_LINEAR, w2w3_param_init=_LINEAR),
        )
        for _ in range(layers)
    ]
    model = Llama3Model.Config(
        dim=dim, vocab_size=vocab, enable_weight_tying=tied, layers=blocks,
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim,
                                        param_init={"weight": partial(nn.init.normal_, std=0.02)}),
        norm=RMSNorm.Config(normalized_shape=dim, param_init=_NORM, eps=norm_eps),
        lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init=_LINEAR),
    )
    return ModelSpec(name="llama3", flavor=flavor, model=model, parallelize_fn=parallelize_llama,
                     pipelining_fn=pipeline_llm, post_optimizer_build_fn=None,
                     state_dict_adapter=Llama3StateDictAdapter)


# Parameters flmplan's runtime does not decay (the embedding, norms, biases); first match wins.
NO_DECAY = r"(^|\.)tok_embeddings\.|norm|\.bias$"


def _adamw(lr, betas, eps, weight_decay):
    """flmplan's optimizer: AdamW, weight decay on matrices only."""
    def group(pattern, decay):
        return ParamGroupConfig(pattern=pattern, optimizer_name="AdamW",
                                optimizer_kwargs={"lr": lr, "betas": betas, "eps": eps, "weight_decay": decay})

    return OptimizersContainer.Config(param_groups=[group(NO_DECAY, 0.0), group(r".*", weight_decay)])


def _config(model_spec, *, lr, warmup, min_lr_factor, steps, local_batch, global_batch, seq, param_dtype,
            replicate, shard, reshard, tp, sequence_parallel, pp, layers_per_stage, ends, schedule, microbatch,
            recompute, folder, interval, initial_load, betas, eps, weight_decay, max_norm):
    return Trainer.Config(
        model_spec=model_spec,
        hf_assets_path="./assets/hf/tokenizer",
        loss=ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(
            global_vocab_size=model_spec.model.vocab_size)),
        optimizer=_adamw(lr, betas, eps, weight_decay),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=warmup, decay_type="cosine",
                                                  min_lr_factor=min_lr_factor),
        training=TrainingConfig(local_batch_size=local_batch, global_batch_size=global_batch, seq_len=seq,
                                steps=steps, mixed_precision_param=param_dtype, max_norm=max_norm,
                                disable_cuda_graphs=pp > 1),  # torchtitan 0.3.0 has no graphs under PP
        dataloader=HuggingFaceTextDataLoader.Config(dataset="c4"),
        parallelism=ParallelismConfig(
            data_parallel_replicate_degree=replicate, data_parallel_shard_degree=shard,
            fsdp_reshard_after_forward=reshard, tensor_parallel_degree=tp,
            enable_sequence_parallel=sequence_parallel, pipeline_parallel_degree=pp,
            pipeline_parallel_layers_per_stage=layers_per_stage, pipeline_parallel_first_stage_less_layers=ends,
            pipeline_parallel_last_stage_less_layers=ends, pipeline_parallel_schedule=schedule,
            pipeline_parallel_microbatch_size=microbatch),
        activation_checkpoint={"none": None, "selective": SelectiveAC.Config(), "full": FullAC.Config()}[recompute],
        checkpoint=CheckpointManager.Config(enable=True, folder=folder, interval=interval,
                                            initial_load_path=os.path.abspath(initial_load) if initial_load else None,
                                            initial_load_model_only=True,
                                            last_save_model_only=False),
    )
