"""The truncated LFM2 trunk's config comes from transformers' own reading of config.json, and only an
attention implementation that is causal without a mask is accepted."""

from __future__ import annotations

import json

import pytest
import torch

from mmfer.core.errors import ConfigError
from mmfer.train.model.fusion import LFM2_700M_CONFIG, LfmFusion, build_backbone, lfm2_config


def test_config_json_keys_keep_their_meaning(tmp_path):
    """A top-level rope_theta (older LFM2 config.json files) and block_ff_dim are read as transformers reads
    them; the old code kept only dataclass fields, so rope_theta fell back to 1e6 silently."""
    values = {k: v for k, v in LFM2_700M_CONFIG.items() if k not in ("rope_parameters", "intermediate_size")}
    values.update(model_type="lfm2", rope_theta=5000.0, block_ff_dim=128, hidden_size=64, num_attention_heads=4,
                  num_key_value_heads=2, block_auto_adjust_ff_dim=False)
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = lfm2_config(str(tmp_path), False, 3, 0)
    assert config.rope_parameters["rope_theta"] == 5000.0
    assert config.intermediate_size == 128
    assert config.num_hidden_layers == 3 and config.layer_types == ["conv", "conv", "full_attention"]
    assert config.vocab_size == 1 and config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="has only 16 layers"):
        lfm2_config(str(tmp_path), False, 17, 0)


def test_attention_that_is_not_causal_without_a_mask_is_refused():
    config = lfm2_config("unused", False, 3, 32)
    LfmFusion(build_backbone(config, None), 8, 8, 2, 2)   # sdpa: accepted
    config._attn_implementation = "eager"                # attends both ways when given no mask
    with pytest.raises(ConfigError, match="'eager'.*both ways"):
        LfmFusion(build_backbone(config, None), 8, 8, 2, 2)


def test_summary_token_sees_only_earlier_tokens_through_sdpa():
    """Causality check of what LfmFusion runs: changing the last token leaves earlier outputs unchanged."""
    torch.manual_seed(0)
    fusion = LfmFusion(build_backbone(lfm2_config("unused", False, 3, 32), None), 8, 8, 2, 2).eval()
    x = torch.randn(1, 5, 32)
    y = x.clone()
    y[:, -1] += 1.0
    with torch.no_grad():
        a, b = fusion.encode(x), fusion.encode(y)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])
