"""Partitioned-attention fusion blocks on top of the two towers (``docs/fusion.md``).

Zorro (Recasens et al. 2023, "Zorro: the masked multimodal transformer", arXiv 2301.09595) routes
tokens with attention masks so that part of the representation stays modality-pure. Here a few of
open_clip's residual attention blocks run over one sequence

    [image stream | text stream | n_f learned fusion tokens]
    allow[q, k] = (type[k] == type[q] or type[q] == FUSION) and key k is not text padding

Image and text tokens attend only to their own modality — not even to the fusion tokens — and MLPs
and LayerNorms act token by token, so each stream is a function of its own input alone: ``encode_image``
and ``encode_text`` run their stream by itself and get what the joint run gives. The fusion tokens
see everything; their pooled output feeds the image–text matching head (ITM, ALBEF: Li et al. 2021,
arXiv 2107.07651).

Each stream is [summary | tokens]: the tower's pooled, projected embedding mapped to the block width
as the first token, then the tower's token outputs. With ``pure_from="streams"`` (default) the pure
embedding is the tower's plus a zero-initialised projection of the stream's first output — so blocks
added to a pretrained dual encoder start from its numbers. ``pure_from="towers"`` keeps the pure
embeddings equal to the towers' (OpenCLIP then computes the same embeddings from the saved towers);
the blocks serve only the fusion stream. The fusion tokens are learned, half of them offset by the
image summary and half by the text summary (``fusion_input``).

Because the streams never look at the fusion tokens, the fusion output of any image paired with any
text needs only the fusion rows of each block, given both streams' states at every block input
(``Streams``): ``fuse`` scores ALBEF's hard negatives and retrieval re-ranking candidates at the cost
of n_f query tokens, without running either stream again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, Transformer

IMAGE, TEXT, FUSION = 0, 1, 2
PURE_FROM = ("streams", "towers")


@dataclass
class FusionConfig:
    depth: int = 2                # partitioned blocks
    width: int = 128              # their width W
    heads: int = 4
    num_fusion_tokens: int = 8    # n_f learned fusion tokens
    mlp_ratio: float = 4.0
    pure_from: str = "streams"    # streams | towers: where encode_image / encode_text take the pure embeddings
    text_queries: bool = False    # also a fusion token per text token (ALBEF's words querying the image)

    @classmethod
    def from_dict(cls, cfg: dict) -> "FusionConfig":
        """A checked config; unknown keys and bad values are ``ValueError``s that name the key."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - set(fields))
        if unknown:
            raise ValueError(f"unknown fusion key {unknown[0]!r} (known: {sorted(fields)})")
        out = cls(**cfg)
        for name in ("depth", "width", "heads", "num_fusion_tokens"):
            value = getattr(out, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"fusion.{name} must be a positive integer, got {value!r}")
        if out.num_fusion_tokens < 2:
            raise ValueError("fusion.num_fusion_tokens must be at least 2 (half start from each modality's summary)")
        if out.width % out.heads:
            raise ValueError(f"fusion.width ({out.width}) must be divisible by fusion.heads ({out.heads})")
        if not isinstance(out.text_queries, bool):
            raise ValueError(f"fusion.text_queries must be true or false, got {out.text_queries!r}")
        if out.pure_from not in PURE_FROM:
            raise ValueError(f"fusion.pure_from must be one of {PURE_FROM}, got {out.pure_from!r}")
        return out


def partition_mask(types: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """allow [B, L, L] (bool) for token types [L] and real (non-padding) keys [B, L].

    allow[b, q, k] = (types[k] == types[q] or types[q] == FUSION) and key_valid[b, k]. A row with
    nothing allowed would give NaN after the softmax; it is an error, never silently filled.
    """
    same = types[None, :] == types[:, None]
    allow = (same | (types[:, None] == FUSION))[None] & key_valid[:, None, :]
    if not allow.any(dim=-1).all():
        raise ValueError("partition mask has a query that may attend to nothing (a stream with no real token)")
    return allow


def additive_mask(allow: torch.Tensor, heads: int) -> torch.Tensor:
    """bool allow [B, Lq, Lk] → the float mask ``nn.MultiheadAttention`` takes, [B·heads, Lq, Lk]."""
    mask = torch.zeros(allow.shape, dtype=torch.float32, device=allow.device).masked_fill_(~allow, float("-inf"))
    return mask.repeat_interleave(heads, dim=0)


@dataclass
class Streams:
    """One modality's stream through the blocks: ``layers[l]`` [B, N, W] enters block l (the last entry
    is the output); ``valid`` [B, N] marks real tokens (False: text padding)."""
    layers: list[torch.Tensor]
    valid: torch.Tensor

    def select(self, index: torch.Tensor) -> "Streams":
        return Streams([x[index] for x in self.layers], self.valid[index])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Streams":
        return Streams([x.to(device, dtype) for x in self.layers], self.valid.to(device))


class PartitionedFusion(torch.nn.Module):
    """The blocks, the stream in/out projections, the fusion tokens and the ITM head."""

    def __init__(self, cfg: FusionConfig, embed_dim: int, image_width: int, text_width: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.image_in, self.text_in = torch.nn.Linear(image_width, w), torch.nn.Linear(text_width, w)
        # One map for both summaries: they live in the shared embedding space, where a matching pair is
        # already close — so the fusion tokens can compare them from the first step.
        self.summary_in = torch.nn.Linear(embed_dim, w)
        self.fusion_tokens = torch.nn.Parameter(torch.randn(cfg.num_fusion_tokens, w) * w ** -0.5)
        if cfg.text_queries:  # marks the fusion copies of the text tokens apart from the text stream's own
            self.query_type = torch.nn.Parameter(torch.randn(w) * w ** -0.5)
        self.blocks = Transformer(w, cfg.depth, cfg.heads, cfg.mlp_ratio, batch_first=True)
        if cfg.pure_from == "streams":
            self.image_ln, self.text_ln = LayerNorm(w), LayerNorm(w)
            self.image_out, self.text_out = torch.nn.Linear(w, embed_dim), torch.nn.Linear(w, embed_dim)
            for out in (self.image_out, self.text_out):  # start from the towers' embeddings
                torch.nn.init.zeros_(out.weight)
                torch.nn.init.zeros_(out.bias)
        self.fusion_ln = LayerNorm(w)
        self.itm_head = torch.nn.Linear(w, 2)

    # -- streams -----------------------------------------------------------------------------------
    def embed(self, modality: int, summary: torch.Tensor, tokens: torch.Tensor,
              valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 1 + N, W] stream input, [B, 1 + N] real tokens) from a tower's embedding and tokens."""
        tokens_in = self.image_in if modality == IMAGE else self.text_in
        x = torch.cat([self.summary_in(summary)[:, None], tokens_in(tokens)], dim=1)
        if valid is None:
            valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return x, torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)

    def stream(self, x: torch.Tensor, valid: torch.Tensor) -> Streams:
        """One modality alone through the blocks (what its part of the joint run computes)."""
        types = torch.zeros(x.shape[1], dtype=torch.long, device=x.device)
        mask = additive_mask(partition_mask(types, valid), self.cfg.heads)
        layers = [x]
        for block in self.blocks.resblocks:
            x = block(x, attn_mask=mask)
            layers.append(x)
        return Streams(layers, valid)

    def pure(self, modality: int, summary: torch.Tensor, streams: Streams | None) -> torch.Tensor:
        """The modality-pure embedding [B, D]."""
        if self.cfg.pure_from == "towers":
            return summary
        ln, out = (self.image_ln, self.image_out) if modality == IMAGE else (self.text_ln, self.text_out)
        return summary + out(ln(streams.layers[-1][:, 0])).to(summary.dtype)

    # -- the joint run -----------------------------------------------------------------------------
    def joint(self, image: torch.Tensor, image_valid: torch.Tensor, text: torch.Tensor,
              text_valid: torch.Tensor) -> tuple[Streams, Streams, torch.Tensor]:
        """[image | text | fusion] through the blocks under the partition mask, each sample with its own pair.

        Returns both streams (states at every block input) and the fusion tokens' output [B, n_f, W].
        """
        n_i, n_t = image.shape[1], text.shape[1]
        fusion, fusion_valid = self.fusion_input(image[:, 0], text, text_valid)
        n_f = fusion.shape[1]
        types = torch.tensor([IMAGE] * n_i + [TEXT] * n_t + [FUSION] * n_f, device=image.device)
        valid = torch.cat([image_valid, text_valid, fusion_valid], 1)
        mask = additive_mask(partition_mask(types, valid), self.cfg.heads)
        x = torch.cat([image, text, fusion], dim=1)
        image_layers, text_layers = [image], [text]
        for block in self.blocks.resblocks:
            x = block(x, attn_mask=mask)
            image_layers.append(x[:, :n_i])
            text_layers.append(x[:, n_i:n_i + n_t])
        return Streams(image_layers, image_valid), Streams(text_layers, text_valid), x[:, n_i + n_t:]

    def fusion_input(self, image_summary: torch.Tensor, text: torch.Tensor,
                     text_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion tokens entering the first block and which are real: ([B, n_f (+ N_t), W], [B, ...]).

        The learned tokens, the first half offset by the image summary, the second by the text summary
        (``text`` [B, 1 + N_t, W] is the text stream's input, its summary first). With learned tokens alone
        the first block's fusion queries would not depend on the pair, and the blocks learn to match images
        and texts slowly (on the demo the ITM loss stayed at its prior for 280 steps); starting from the
        two summaries, the first attention already compares them.

        With ``text_queries`` a copy of every text token follows (plus a learned type vector): as in ALBEF's
        cross-attention, each word queries the image patches from the first block, and the learned tokens
        read the words' findings in the next. Padding copies are not keys; only the learned tokens are pooled.
        """
        f = self.fusion_tokens.to(image_summary.dtype).expand(image_summary.shape[0], -1, -1)
        half = f.shape[1] // 2
        f = torch.cat([f[:, :half] + image_summary[:, None], f[:, half:] + text[:, :1]], dim=1)
        valid = torch.ones(f.shape[:2], dtype=torch.bool, device=f.device)
        if self.cfg.text_queries:
            f = torch.cat([f, text[:, 1:] + self.query_type.to(text.dtype)], dim=1)
            valid = torch.cat([valid, text_valid[:, 1:]], dim=1)
        return f, valid

    def fuse(self, image: Streams, text: Streams, image_index: torch.Tensor | None = None,
             text_index: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion tokens' output [P, n_f, W] for P pairs (image ``image_index[p]``, text ``text_index[p]``;
        without indices, row p of each).

        Equal to the fusion part of ``joint`` on those pairs: the streams' states do not depend on the
        fusion tokens or on each other, so only the fusion rows of each block are computed, and each
        item's keys and values once per block however many pairs it is in.
        """
        if image_index is None:
            image_index = text_index = torch.arange(image.valid.shape[0], device=image.valid.device)
        f, f_valid = self.fusion_input(image.layers[0][image_index, 0], text.layers[0][text_index],
                                       text.valid[text_index])
        p, n_f, w = f.shape
        heads = self.cfg.heads
        allow = torch.cat([image.valid[image_index], text.valid[text_index], f_valid], dim=1)
        mask = torch.zeros(allow.shape, dtype=f.dtype, device=f.device).masked_fill_(~allow, float("-inf"))
        mask = mask[:, None, None, :]  # [P, 1, 1, L]: the same keys for every head and fusion query
        for depth, block in enumerate(self.blocks.resblocks):
            attn = block.attn  # nn.MultiheadAttention's packed projections, applied as it applies them
            w_q, w_kv = attn.in_proj_weight[:w], attn.in_proj_weight[w:]
            b_q, b_kv = attn.in_proj_bias[:w], attn.in_proj_bias[w:]
            kv_image = F.linear(block.ln_1(image.layers[depth]), w_kv, b_kv)[image_index]
            kv_text = F.linear(block.ln_1(text.layers[depth]), w_kv, b_kv)[text_index]
            x = block.ln_1(f)
            kv = torch.cat([kv_image, kv_text, F.linear(x, w_kv, b_kv)], dim=1)   # [P, L, 2W]
            q = F.linear(x, w_q, b_q).view(p, n_f, heads, -1).transpose(1, 2)
            k, v = (t.reshape(p, -1, heads, w // heads).transpose(1, 2) for t in kv.chunk(2, dim=-1))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
            out = attn.out_proj(out.transpose(1, 2).reshape(p, n_f, w))
            f = f + block.ls_1(out)
            f = f + block.ls_2(block.mlp(block.ln_2(f)))
        return f

    def fusion_embedding(self, fused: torch.Tensor) -> torch.Tensor:
        """The joint image–text representation [P, W]: the learned fusion tokens' mean, normalised."""
        return self.fusion_ln(fused[:, :self.cfg.num_fusion_tokens].mean(dim=1))

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """[P, 2] (no match, match) logits of the image–text matching head."""
        return self.itm_head(self.fusion_embedding(fused))

    def match_score(self, image: Streams, text: Streams, image_index: torch.Tensor | None = None,
                    text_index: torch.Tensor | None = None) -> torch.Tensor:
        """log p(match) − log p(no match) [P] of the ITM head for pairs (as in ``fuse``)."""
        logits = self.itm_logits(self.fuse(image, text, image_index, text_index)).float()
        return logits[:, 1] - logits[:, 0]


def check_towers(model: torch.nn.Module) -> None:
    """Fusion needs token outputs: open_clip's ViT image tower and its causal text tower."""
    from open_clip.transformer import VisionTransformer
    if not isinstance(model.visual, VisionTransformer):
        raise ValueError(f"fusion blocks need open_clip's ViT image tower (its patch tokens); this model's is "
                         f"{type(model.visual).__name__}")
    if model.text_pool_type not in ("argmax", "eos"):
        raise ValueError(f"fusion blocks need a text tower pooled at its end-of-text token; this one pools "
                         f"{model.text_pool_type!r}")


def text_valid(text: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    """[B, L] real text tokens: everything up to and including the end-of-text token."""
    end = text.argmax(dim=-1) if pool_type == "argmax" else (text == eos_id).int().argmax(dim=-1)
    return torch.arange(text.shape[1], device=text.device)[None, :] <= end[:, None]
