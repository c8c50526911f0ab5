"""One reply, step by step: thinker text tokens and talker codec tokens, interleaved.

This is transformers' Qwen2_5OmniForConditionalGeneration.generate taken apart so that nothing waits for the
whole reply: the talker's step s reads the thinker's reply token s+1 (its embedding plus its last hidden
state), so the talker runs as soon as the thinker is one token ahead of it, and each codec token can go to
the vocoder at once. The consumer iterates `steps()` and simply stops iterating to cancel: no step runs
after that. The talker's inputs are built exactly as transformers builds them (see the tests, which hold
the streamed codes to transformers' own generate with the same sampling).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from engine.backends.omni.prompt import PromptInputs


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


# The talker's sampling in transformers' generate (the values Qwen ships).
TALKER_SAMPLING = Sampling(temperature=0.9, top_k=40, top_p=0.8, repetition_penalty=1.05)


@dataclass(frozen=True)
class TextToken:
    id: int


@dataclass(frozen=True)
class CodecToken:
    id: int


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None,
           history: list[int] = (), suppress: tuple[int, ...] = ()) -> int:
    logits = logits.float().clone()
    if suppress:
        logits[list(suppress)] = -float("inf")
    if sampling.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), device=logits.device)
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / sampling.repetition_penalty,
                                   picked * sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature
    if sampling.top_k:
        cutoff = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits[logits < cutoff] = -float("inf")
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) > sampling.top_p
        logits[order[drop]] = -float("inf")
    probs = torch.softmax(logits, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


class OmniGeneration:
    """Generates one reply. `steps()` yields TextToken and CodecToken in the order they are made."""

    def __init__(self, model, inputs: PromptInputs, speaker: dict | None, *, eos_ids: tuple[int, ...],
                 max_text_tokens: int = 256, max_codes: int = 4096, codes_per_text_token: int = 30,
                 thinker_sampling: Sampling = Sampling(), talker_sampling: Sampling = TALKER_SAMPLING,
                 seed: int | None = None):
        self.model, self.inputs, self.speaker = model, inputs, speaker
        self.thinker = model.thinker
        self.talker = model.talker if speaker is not None else None
        self.device = self.thinker.get_input_embeddings().weight.device
        self.eos_ids = eos_ids
        self.max_text_tokens, self.max_codes, self.codes_per_text_token = max_text_tokens, max_codes, codes_per_text_token
        self.thinker_sampling, self.talker_sampling = thinker_sampling, talker_sampling
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.text_tokens: list[int] = []
        self.codes: list[int] = []
        self.prompt_tokens = int(inputs.input_ids.shape[1])
        # Thinker state
        self._thinker_cache = None
        self._rope_delta = None
        self._thinker_done = False
        self._fed = 0  # reply tokens fed back into the thinker (so their hidden states are known)
        # Talker inputs: one (1, 1, D) tensor per fed reply token, then text-EOS, then text-pad forever.
        self._reply: list[torch.Tensor] = []
        self._prompt_embeds = None
        self._prompt_hidden = None
        self._talker_cache = None
        self._talker_done = speaker is None

    # --- the loop ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def steps(self) -> Iterator[TextToken | CodecToken]:
        yield from self._thinker_prefill()
        while not (self._thinker_done and self._talker_done):
            if not self._talker_done and self._talker_input_ready():
                yield from self._talker_step()
            else:
                yield from self._thinker_step()

    # --- thinker ----------------------------------------------------------------------------------

    def _thinker_prefill(self) -> Iterator[TextToken]:
        inputs = self.inputs
        position_ids, self._rope_delta = self.thinker.get_rope_index(
            inputs.input_ids, inputs.image_grid_thw, None, torch.ones_like(inputs.input_ids), False,
            inputs.audio_lengths)
        out = self.thinker(input_ids=inputs.input_ids, input_features=inputs.input_features,
                           feature_attention_mask=inputs.feature_attention_mask, pixel_values=inputs.pixel_values,
                           image_grid_thw=inputs.image_grid_thw, position_ids=position_ids, use_cache=True,
                           output_hidden_states=self.talker is not None)
        self._thinker_cache = out.cache
        if self.talker is not None:
            embeds = out.hidden_states[0].clone()
            # As transformers does: the talker sees no audio/image features, only the text around them.
            config = self.thinker.config
            media = torch.isin(inputs.input_ids, torch.tensor([config.audio_token_index, config.image_token_index,
                                                               config.video_token_index], device=self.device))
            embeds[media] = 0
            self._prompt_embeds, self._prompt_hidden = embeds, out.hidden_states[-1]
        yield from self._take(out.logits[0, -1])

    def _thinker_step(self) -> Iterator[TextToken]:
        if self._thinker_done:
            raise RuntimeError("the talker waits for a thinker that has finished")  # cannot happen
        token = self.text_tokens[-1]
        position = self.prompt_tokens + self._fed + self._rope_delta.to(self.device)
        position_ids = position.view(1, 1, 1).expand(3, 1, 1)
        out = self.thinker(input_ids=torch.tensor([[token]], device=self.device), position_ids=position_ids,
                           cache=self._thinker_cache, use_cache=True, output_hidden_states=self.talker is not None)
        self._thinker_cache = out.cache
        self._fed += 1
        if self.talker is not None:
            self._reply.append(out.hidden_states[0] + out.hidden_states[-1])
        yield from self._take(out.logits[0, -1])

    def _take(self, logits: torch.Tensor) -> Iterator[TextToken]:
        token = sample(logits, self.thinker_sampling, self.generator, self.text_tokens)
        if token in self.eos_ids:
            self._thinker_done = True
            return
        self.text_tokens.append(token)
        if len(self.text_tokens) >= self.max_text_tokens:
            # Out of budget: end here. The last token is never fed back, so (as in transformers) it is
            # not spoken either: drop it from the text too, so the transcript says what the audio says.
            self.text_tokens.pop()
            self._thinker_done = True
            return
        yield TextToken(token)

    # --- talker -----------------------------------------------------------------------------------

    def _talker_input_ready(self) -> bool:
        needed = len(self.codes)  # prefill reads reply token 0; decode step s (after code s) reads token s+1
        return self._thinker_done or needed < len(self._reply)

    def _reply_part(self, index: int) -> torch.Tensor:
        if index < len(self._reply):
            return self._reply[index]
        embed = self.thinker.get_input_embeddings()
        token = self.talker.text_eos_token if index == len(self._reply) else self.talker.text_pad_token
        return embed(torch.tensor([[token]], device=self.device))

    def _talker_step(self) -> Iterator[CodecToken]:
        if not self._reply and self._thinker_done:
            self._talker_done = True  # the reply was empty: nothing to say
            return
        talker = self.talker
        if self._talker_cache is None:
            embed = self.thinker.get_input_embeddings()
            bos = self.speaker["bos_token"]
            bos_embed = embed(torch.tensor([[bos]], device=self.device))
            inputs_embeds = torch.cat([self._prompt_hidden + self._prompt_embeds, bos_embed, self._reply_part(0)], 1)
            text_ids = torch.cat([self.inputs.input_ids, torch.tensor([[bos, self.text_tokens[0]]], device=self.device)],
                                 dim=1)
            out = talker(inputs_embeds=inputs_embeds, attention_mask=torch.ones_like(text_ids), input_text_ids=text_ids,
                         image_grid_thw=self.inputs.image_grid_thw, audio_feature_lengths=self.inputs.audio_lengths,
                         use_cache=True)
            self._prompt_embeds = self._prompt_hidden = None  # no longer needed
        else:
            length = self._talker_cache.get_seq_length() + 1
            out = talker(input_ids=torch.tensor([[self.codes[-1]]], device=self.device),
                         attention_mask=torch.ones((1, length), dtype=torch.long, device=self.device),
                         thinker_reply_part=self._reply_part(len(self.codes)), cache=self._talker_cache,
                         use_cache=True)
        self._talker_cache = out.cache
        code = sample(out.logits[0, -1], self.talker_sampling, self.generator, self.codes,
                      suppress=(talker.codec_bos_token,))
        cap = self.max_codes
        if self._thinker_done:
            cap = min(cap, self.codes_per_text_token * max(1, len(self.text_tokens)) + 50)
        if code in (talker.codec_eos_token, talker.codec_pad_token) or len(self.codes) >= cap:
            self._talker_done = True
            return
        self.codes.append(code)
        yield CodecToken(code)
