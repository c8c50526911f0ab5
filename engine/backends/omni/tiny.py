"""A tiny Qwen2.5-Omni of the real architecture with random weights, built from a config in a second.

It exercises every code path a real checkpoint does (audio encoder, vision encoder, thinker, talker, DiT,
BigVGAN, the chat prompt with expanded placeholders) so the backend can be tested and benchmarked on a
machine without the multi-GB weights. Its speech is noise and its text is random bytes, by design.
Sizes follow transformers' own tests for this model: tiny hidden sizes, two layers a tower.
"""

from __future__ import annotations

import json

import torch

# The tiny tokenizer is byte-level with no merges: one token per byte (ids 0-255), then the specials.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
    "<|IMAGE|>", "<|vision_bos|>", "<|vision_eos|>", "<|VIDEO|>",
    "<|tts_pad|>", "<|tts_bos|>", "<|tts_eos|>",
)
SPECIAL = {token: 256 + index for index, token in enumerate(SPECIAL_TOKENS)}
TEXT_VOCAB = 256 + len(SPECIAL_TOKENS) + 3  # a little slack, as real vocabularies have
CODEC_VOCAB = 64
CODEC_PAD, CODEC_BOS, CODEC_EOS, CODEC_MASK = 60, 61, 62, 63
MEL_DIM = 80  # the vocoder's input: the real value, so the speaker reference mel has the real shape


def tiny_config(dit_block_size: int = 24):
    from transformers import Qwen2_5OmniConfig

    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [1, 1, 2]}
    ids = dict(audio_token_index=SPECIAL["<|AUDIO|>"], image_token_index=SPECIAL["<|IMAGE|>"],
               video_token_index=SPECIAL["<|VIDEO|>"], audio_start_token_id=SPECIAL["<|audio_bos|>"],
               audio_end_token_id=SPECIAL["<|audio_eos|>"], vision_start_token_id=SPECIAL["<|vision_bos|>"],
               vision_end_token_id=SPECIAL["<|vision_eos|>"])
    thinker = dict(
        audio_config=dict(d_model=32, encoder_attention_heads=4, encoder_ffn_dim=32, encoder_layers=2,
                          num_mel_bins=20, max_source_positions=1500, n_window=100, output_dim=32),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           out_hidden_size=32, fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=TEXT_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters=rope, tie_word_embeddings=False,
                         eos_token_id=SPECIAL["<|im_end|>"]),
        user_token_id=ord("u"), **ids,
    )
    talker = dict(vocab_size=CODEC_VOCAB, embedding_size=32, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=8192, rope_parameters=rope,
                  tts_text_start_token_id=SPECIAL["<|tts_bos|>"], tts_text_end_token_id=SPECIAL["<|tts_eos|>"],
                  tts_text_pad_token_id=SPECIAL["<|tts_pad|>"], tts_codec_start_token_id=CODEC_BOS,
                  tts_codec_end_token_id=CODEC_EOS, tts_codec_pad_token_id=CODEC_PAD,
                  tts_codec_mask_token_id=CODEC_MASK, spatial_merge_size=2, **ids)
    token2wav = dict(
        dit_config=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, head_dim=16, ff_mult=2,
                        emb_dim=16, block_size=dit_block_size, look_ahead_layers=[2], look_backward_layers=[0, 3],
                        repeats=2, num_embeds=CODEC_VOCAB, mel_dim=MEL_DIM, dropout=0.0, enc_emb_dim=16,
                        enc_dim=16, enc_channels=[16, 16, 16, 16, 48], enc_attention_channels=8,
                        enc_se_channels=8, max_position_embeddings=8192,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        bigvgan_config=dict(mel_dim=MEL_DIM, upsample_initial_channel=64,
                            resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]]),
    )
    return Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, token2wav_config=token2wav)


def tiny_tokenizer():
    """A byte-level fast tokenizer with the real special-token names (so prompts are built the same way)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_unicode = _bytes_to_unicode()
    vocab = {byte_to_unicode[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])  # ids 256, 257, ...
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for token, index in SPECIAL.items():
        assert tokenizer.convert_tokens_to_ids(token) == index, token
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map, which the ByteLevel pre-tokenizer uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def tiny_speakers(config, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Speaker conditioning in the shape of the real spk_dict.pt: a text BOS id, an x-vector and a reference mel."""
    generator = torch.Generator().manual_seed(seed)
    dit = config.token2wav_config.dit_config
    speakers = {}
    for name in ("Chelsie", "Ethan"):
        speakers[name] = {
            "bos_token": config.talker_config.tts_text_start_token_id,
            "cond": torch.randn(1, dit.enc_emb_dim, generator=generator),
            "ref_mel": torch.randn(1, 30, dit.mel_dim, generator=generator) * 0.5,
        }
    return speakers


def build_tiny_model(seed: int = 0, dit_block_size: int = 24):
    """The random-weight model, its speakers, tokenizer and the feature extractor and image processor settings."""
    from transformers import Qwen2_5OmniForConditionalGeneration

    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the talker's config names thinker token ids; real configs do the same
    try:
        config = tiny_config(dit_block_size)
    finally:
        hf_logging.set_verbosity(verbosity)
    config.thinker_config._attn_implementation = "sdpa"
    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    _audible(model.token2wav)
    model.thinker.lm_head = _words_head(model.thinker.lm_head)
    model.talker.codec_head = _biased(model.talker.codec_head, {CODEC_PAD: -12.0, CODEC_EOS: -12.0,
                                                                CODEC_BOS: -12.0, CODEC_MASK: -12.0})
    model.speaker_map = tiny_speakers(config, seed)
    return model


def _words_head(head: torch.nn.Linear) -> torch.nn.Linear:
    """Random weights write random bytes with a space every ~270 tokens, which leaves no words for a
    transcript (and its truncation) to be checked on: favour lowercase letters and spaces. The end of the
    turn stays possible but rare."""
    biases = {index: -12.0 for index in range(head.out_features)}
    biases.update({ord(c): 0.0 for c in "abcdefghijklmnopqrstuvwxyz"})
    biases.update({ord(" "): 1.5, SPECIAL["<|im_end|>"]: -4.0})
    return _biased(head, biases)


def _biased(head: torch.nn.Linear, biases: dict[int, float]) -> torch.nn.Linear:
    """The same projection plus a bias (0 where not given). Random heads would otherwise end the talker's
    speech at a random step about one time in thirty."""
    steered = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        steered.weight.copy_(head.weight)
        steered.bias.zero_()
        for index, value in biases.items():
            steered.bias[index] = value
    return steered


def _audible(token2wav) -> None:
    """Re-draw the vocoder's weights at unit gain: at the LM init (std 0.02) its output is ~1e-8, which would
    make every audio comparison pass trivially."""
    with torch.no_grad():
        for module in token2wav.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                fan_in = module.weight[0].numel() if not isinstance(module, torch.nn.ConvTranspose1d) \
                    else module.weight.shape[0] * module.weight.shape[2] // max(1, module.stride[0])
                module.weight.normal_(0.0, 1.0 / fan_in ** 0.5)
        token2wav.code2wav_bigvgan_model.conv_post.weight.mul_(0.02)  # speech level, well inside the ±1 clamp


def describe() -> str:
    return json.dumps({"thinker_hidden": 32, "layers": 2, "text_vocab": TEXT_VOCAB, "codec_vocab": CODEC_VOCAB})
