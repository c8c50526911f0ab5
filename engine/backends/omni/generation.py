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

from engine.backends.omni.conversation_cache import ConversationCache
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
                 seed: int | None = None, cache: ConversationCache | None = None):
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
        self.cached_tokens = 0  # prompt tokens whose keys/values came from the conversation cache
        self.cache = cache or ConversationCache()
        # Thinker state
        self._rope_delta = None
        self._thinker_done = False
        self._fed = 0  # reply tokens fed back into the thinker (so their hidden states are known)
        # Talker inputs: one (1, 1, D) tensor per fed reply token, then text-EOS, then text-pad forever.
        self._reply: list[torch.Tensor] = []
        self._talker_started = False
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
        logits, self._rope_delta, self.cached_tokens = _thinker_prompt(self.thinker, self.inputs, self.cache)
        yield from self._take(logits)

    def _thinker_step(self) -> Iterator[TextToken]:
        if self._thinker_done:
            raise RuntimeError("the talker waits for a thinker that has finished")  # cannot happen
        token = self.text_tokens[-1]
        position = self.prompt_tokens + self._fed + self._rope_delta.to(self.device)
        position_ids = position.view(1, 1, 1).expand(3, 1, 1)
        out = self.thinker(input_ids=torch.tensor([[token]], device=self.device), position_ids=position_ids,
                           cache=self.cache.thinker, use_cache=True, output_hidden_states=True)
        self.cache.thinker = out.cache
        self._fed += 1
        state = out.hidden_states[0] + out.hidden_states[-1]
        self.cache.extend([token], state)
        self._reply.append(state)
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

    def _talker_prefill(self):
        """The talker's prompt as transformers builds it: the thinker's prompt states, the speaker's text
        BOS, the first reply token; the codec PAD and BOS embeddings added to the last two positions."""
        talker, cache, inputs = self.talker, self.cache, self.inputs
        ids = inputs.input_ids[0].tolist()
        keep = cache.reuse_talker(ids)
        bos = self.speaker["bos_token"]
        embed = self.thinker.get_input_embeddings()
        inputs_embeds = torch.cat([cache.states()[:, keep:len(ids)], embed(torch.tensor([[bos]], device=self.device)),
                                   self._reply_part(0)], dim=1)
        codec = talker.get_input_embeddings()
        inputs_embeds[:, -1] += codec(torch.tensor([talker.codec_bos_token], device=self.device))[0]
        inputs_embeds[:, -2] += codec(torch.tensor([talker.codec_pad_token], device=self.device))[0]
        text_ids = torch.cat([inputs.input_ids, torch.tensor([[bos, self.text_tokens[0]]], device=self.device)], 1)
        positions, talker.rope_deltas = talker.get_rope_index(
            text_ids, inputs.image_grid_thw, None, torch.ones_like(text_ids), False, inputs.audio_lengths)
        return talker(inputs_embeds=inputs_embeds, position_ids=positions[:, :, keep:], cache=cache.talker,
                      use_cache=True)

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
        talker, cache = self.talker, self.cache
        if not self._talker_started:
            self._talker_started = True
            out = self._talker_prefill()
        else:
            length = cache.talker.get_seq_length() + 1
            out = talker(input_ids=torch.tensor([[self.codes[-1]]], device=self.device),
                         attention_mask=torch.ones((1, length), dtype=torch.long, device=self.device),
                         thinker_reply_part=self._reply_part(len(self.codes)), cache=cache.talker, use_cache=True)
        cache.talker = out.cache
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


@torch.inference_mode()
def prefill(model, inputs: PromptInputs, cache: ConversationCache, talker: bool = True) -> int:
    """Run a conversation's prompt into its cache ahead of time (the history while the user speaks), so
    the reply prefills only what comes after it. Returns how many tokens were already cached."""
    _, _, cached = _thinker_prompt(model.thinker, inputs, cache)
    if talker:
        ids = inputs.input_ids[0].tolist()
        keep = cache.reuse_talker(ids)
        if keep < len(ids):
            positions, _ = model.talker.get_rope_index(inputs.input_ids, inputs.image_grid_thw, None,
                                                       torch.ones_like(inputs.input_ids), False, inputs.audio_lengths)
            out = model.talker(inputs_embeds=cache.states()[:, keep:len(ids)], position_ids=positions[:, :, keep:],
                               cache=cache.talker, use_cache=True)
            cache.talker = out.cache
    return cached


def _thinker_prompt(thinker, inputs: PromptInputs, cache: ConversationCache):
    """Run the part of the prompt the cache does not hold; returns (last logits, rope delta, cached count)."""
    config = thinker.config
    media_ids = {config.audio_token_index, config.image_token_index, config.video_token_index}
    ids = inputs.input_ids[0].tolist()
    positions, rope_delta = thinker.get_rope_index(inputs.input_ids, inputs.image_grid_thw, None,
                                                   torch.ones_like(inputs.input_ids), False, inputs.audio_lengths)
    keep = cache.reuse_thinker(ids, media_ids)
    new_ids = inputs.input_ids[:, keep:]
    out = thinker(input_ids=new_ids, position_ids=positions[:, :, keep:], cache=cache.thinker, use_cache=True,
                  output_hidden_states=True, **_media_after(ids[:keep], inputs, config))
    cache.thinker = out.cache
    embeds = out.hidden_states[0].clone()
    # As transformers does: the talker sees no audio/image features, only the text around them.
    embeds[torch.isin(new_ids, torch.tensor(sorted(media_ids), device=new_ids.device))] = 0
    cache.extend(ids[keep:], embeds + out.hidden_states[-1])
    return out.logits[0, -1], rope_delta, keep


def _media_after(prefix: list[int], inputs: PromptInputs, config) -> dict:
    """The audio features and image patches of the media blocks that start after `prefix`."""
    audio_runs = _runs(prefix, config.audio_token_index)
    image_runs = _runs(prefix, config.image_token_index)
    media: dict = {}
    if inputs.input_features is not None and audio_runs < inputs.input_features.shape[0]:
        media["input_features"] = inputs.input_features[audio_runs:]
        media["feature_attention_mask"] = inputs.feature_attention_mask[audio_runs:]
    if inputs.image_grid_thw is not None and image_runs < inputs.image_grid_thw.shape[0]:
        patches = int(inputs.image_grid_thw[:image_runs].prod(dim=-1).sum())
        media["pixel_values"] = inputs.pixel_values[patches:]
        media["image_grid_thw"] = inputs.image_grid_thw[image_runs:]
    return media


def _runs(ids: list[int], token: int) -> int:
    """How many separate runs of `token` there are in `ids` (one run is one audio clip or one image)."""
    return sum(1 for i, t in enumerate(ids) if t == token and (i == 0 or ids[i - 1] != token))
