"""Token-level distillation across tokenizers: Universal Logit Distillation (ULD,
Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
Distillation Loss for LLMs").

A teacher and a student with different vocabularies cannot compare probabilities token
by token. ULD compares their *shapes*: at each aligned position, both distributions are
sorted from the most to the least likely token, the shorter padded with zeros, and the
loss is the L1 distance between the two sorted vectors (the closed form of the
Wasserstein-1 distance between them under a uniform cost, which the paper derives).
The student learns how sure the teacher is, and how its mass falls off, at each step.

Alignment: the paper pairs the i-th answer token of one tokenisation with the i-th of
the other, which here made the student worse than the student alone (docs/
language-models.md). kdcore pairs positions by characters instead: each student row is
decoded segment by segment (split at its ends of text), both tokenizers encode the
segment with offsets, and a student position and a teacher position are compared when
the tokens they predict start at the same character (both tokenisations have a
boundary there: with word-level pre-tokenisers, at least every word). A segment whose
decoding does not give the student's tokens back gives no pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.text.rows import TextSplit
from kdcore.text.tokens import TextTokenizer


@dataclass
class TeacherBatch:
    """The student's rows in the teacher's tokens, and the pairs of prediction
    positions compared (flat indices into batch x length of each side's logits)."""

    ids: Tensor
    attention: Tensor
    student_positions: Tensor
    teacher_positions: Tensor


def _segments(ids: list[int], eos: int) -> list[list[int]]:
    """A row's ids split at its ends of text (each end of text a segment of its own)."""
    out: list[list[int]] = [[]]
    for i in ids:
        if i == eos:
            out += [[i], []]
        else:
            out[-1].append(i)
    return [seg for seg in out if seg]


def _starts(tok: TextTokenizer, text: str) -> tuple[list[int], list[int]]:
    """The text's ids in `tok` and the character where each token starts."""
    enc = tok.tok.encode(text, add_special_tokens=False)
    return list(enc.ids), [a for a, _ in enc.offsets]


def retokenise(
    rows: TextSplit, student: TextTokenizer, teacher: TextTokenizer, max_len: int
) -> TeacherBatch:
    """Each student row's text in the teacher's tokens (ends of text kept), and the
    positions where both predict a token that starts at the same character."""
    s_len = rows.ids.shape[1]
    t_rows: list[list[int]] = []
    s_pos: list[int] = []
    t_pos: list[tuple[int, int]] = []
    for b in range(rows.ids.shape[0]):
        n = int(rows.attention[b].sum())
        predicted = rows.targets[b, :n]
        s_index, t_ids = 0, list[int]()  # where the segment starts in each row
        for seg in _segments(rows.ids[b, :n].tolist(), student.eos_id):
            if seg == [student.eos_id]:
                pairs = [(s_index, len(t_ids))]
                t_seg = [teacher.eos_id]
            else:
                text = student.decode(seg)
                s_ids, s_starts = _starts(student, text)
                t_seg, t_starts = _starts(teacher, text)
                if s_ids != seg:  # decoding did not give these tokens back: no pairs
                    pairs = []
                else:
                    at = {c: j for j, c in enumerate(t_starts)}
                    pairs = [
                        (s_index + k, len(t_ids) + at[c]) for k, c in enumerate(s_starts) if c in at
                    ]
            for k, m in pairs:  # token k (m) is predicted at position k - 1 (m - 1)
                if k >= 1 and m >= 1 and m < max_len and bool(predicted[k]):
                    s_pos.append(b * s_len + k - 1)
                    t_pos.append((b, m - 1))
            s_index += len(seg)
            t_ids += t_seg
        t_rows.append(t_ids[:max_len] or [teacher.eos_id])
    width = max(len(r) for r in t_rows)
    ids_t = torch.full((len(t_rows), width), teacher.pad_id, dtype=torch.long)
    attention = torch.zeros((len(t_rows), width), dtype=torch.long)
    for b, row in enumerate(t_rows):
        ids_t[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[b, : len(row)] = 1
    return TeacherBatch(
        ids_t,
        attention,
        torch.tensor(s_pos, dtype=torch.long),
        torch.tensor([b * width + p for b, p in t_pos], dtype=torch.long),
    )


def uld_distance(student_rows: Tensor, teacher_rows: Tensor, temperature: float) -> Tensor:
    """Per position: || sort(softmax(s / T)) - sort(softmax(t / T)) ||_1, the shorter
    sorted vector padded with zeros."""
    p_s = F.softmax(student_rows.float() / temperature, dim=-1).sort(dim=-1, descending=True).values
    p_t = F.softmax(teacher_rows.float() / temperature, dim=-1).sort(dim=-1, descending=True).values
    width = max(p_s.shape[-1], p_t.shape[-1])
    p_s = F.pad(p_s, (0, width - p_s.shape[-1]))
    p_t = F.pad(p_t, (0, width - p_t.shape[-1]))
    return (p_s - p_t).abs().sum(-1)


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    batch: TeacherBatch,
    ce: Tensor,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
) -> dict[str, Tensor]:
    """ce_weight * the student's cross-entropy + kd_weight * the mean ULD distance over
    the aligned positions."""
    s_rows = student_logits.reshape(-1, student_logits.shape[-1])[batch.student_positions]
    t_rows = teacher_logits.reshape(-1, teacher_logits.shape[-1])[batch.teacher_positions]
    kd = uld_distance(s_rows, t_rows, temperature).sum() / max(len(batch.student_positions), 1)
    return {"loss": ce_weight * ce + kd_weight * kd, "ce": ce.detach(), "kd": kd.detach()}
