//! Attention layouts: for a batch of B rows of T query tokens (after `past` cached keys, K =
//! past + T), each query's RoPE position and the additive mask of the keys it may see. Every
//! forward builds its layout here: right-padded rows, packed documents, left-padded prompts
//! into a cache, one decode step, and (in `train::policy`) thoughts branching off a shared prefix.
//! Also which document each token of a packed row belongs to (`Segments`), for the blocks that
//! carry a state along the row instead of masking keys (NemotronH's conv and SSD scan).

/// The additive mask value of a hidden key (−∞ would give NaN in a row with every key hidden).
pub const MASKED: f32 = -1e30;

/// Token-to-token segment structure for packed rows: `same[b][i][j]` — may token j's input reach
/// token i's state (same document)? Only documents that are contiguous runs are supported.
pub struct Segments {
    /// [B][T] id of each token's document; runs of equal ids are documents.
    pub ids: Vec<Vec<u32>>,
}

/// Where each query token sits and which keys it may see.
pub struct AttnLayout {
    /// [B*T] RoPE position of every query token.
    pub positions: Vec<u32>,
    /// [B*T*K] additive mask (0 or MASKED), K = past + T.
    pub mask: Vec<f32>,
}

impl AttnLayout {
    /// Causal attention over right-padded rows: row b has `lens[b]` real tokens at positions
    /// 0..lens[b]; keys past a row's length are hidden.
    pub fn right_padded(lens: &[usize], t: usize) -> Self {
        let segs: Vec<Vec<u32>> = lens.iter().map(|&l| vec![0; l]).collect();
        Self::segmented(&segs, t)
    }

    /// Causal attention where each row is a sequence of segments (packed documents): a token sees
    /// only earlier tokens of its own segment, and positions restart at 0 in each segment.
    /// `segments[b][i]` is the segment id of token i of row b; rows are right-padded to `t`.
    pub fn segmented(segments: &[Vec<u32>], t: usize) -> Self {
        let b = segments.len();
        let mut positions = vec![0u32; b * t];
        let mut mask = vec![MASKED; b * t * t];
        for (r, seg) in segments.iter().enumerate() {
            let mut pos = 0u32;
            for i in 0..t {
                if i < seg.len() {
                    if i > 0 && seg[i] != seg[i - 1] {
                        pos = 0;
                    }
                    positions[r * t + i] = pos;
                    pos += 1;
                    for j in 0..=i {
                        if seg[j] == seg[i] {
                            mask[(r * t + i) * t + j] = 0.0;
                        }
                    }
                } else {
                    // Padding query: sees the real keys, its output is ignored.
                    for j in 0..seg.len().min(i + 1) {
                        mask[(r * t + i) * t + j] = 0.0;
                    }
                }
            }
        }
        AttnLayout { positions, mask }
    }
}

impl AttnLayout {
    /// Left-padded prompts of `lens[b]` tokens in T = max(lens) columns, into an empty cache:
    /// row b's prompt starts at column T − lens[b] with position 0 and sees only its own tokens.
    /// Returns the layout and each row's first column.
    pub fn left_padded(lens: &[usize]) -> (Self, Vec<usize>) {
        let b = lens.len();
        let t = lens.iter().copied().max().unwrap_or(0);
        let mut positions = Vec::with_capacity(b * t);
        let mut mask = vec![MASKED; b * t * t];
        let starts: Vec<usize> = lens.iter().map(|&l| t - l).collect();
        for (r, &start) in starts.iter().enumerate() {
            for i in 0..t {
                positions.push(i.saturating_sub(start) as u32);
                if i >= start {
                    for m in &mut mask[(r * t + i) * t + start..=(r * t + i) * t + i] {
                        *m = 0.0;
                    }
                }
            }
        }
        (AttnLayout { positions, mask }, starts)
    }

    /// T new tokens per row after `past` cached columns: row r's tokens continue at position
    /// `next_pos[r]` and see the cached columns from `row_start[r]` on, then each other causally.
    pub fn cache_step(row_start: &[usize], next_pos: &[u32], past: usize, t: usize) -> Self {
        let b = row_start.len();
        let k = past + t;
        let mut positions = Vec::with_capacity(b * t);
        let mut mask = vec![MASKED; b * t * k];
        for r in 0..b {
            for i in 0..t {
                positions.push(next_pos[r] + i as u32);
                let row = &mut mask[(r * t + i) * k..(r * t + i + 1) * k];
                for m in &mut row[row_start[r]..=past + i] {
                    *m = 0.0;
                }
            }
        }
        AttnLayout { positions, mask }
    }
}

impl AttnLayout {
    /// What a recurrent (Mamba) block needs from the layout, for B rows of T queries after
    /// `past` cached keys: [B*T] 1.0 for real tokens (a query that sees its own key), 0.0 for
    /// padding; and, when some row packs several documents (a real token that cannot see an
    /// earlier real token of its row), each token's document (the first key it sees). With a
    /// cache every row is one document.
    pub fn tokens_and_documents(&self, b: usize, t: usize, past: usize) -> (Vec<f32>, Option<Segments>) {
        let k = past + t;
        let visible = |r: usize, i: usize, j: usize| self.mask[(r * t + i) * k + j] == 0.0;
        let mut real = vec![0f32; b * t];
        let mut ids = vec![vec![0u32; t]; b];
        let mut packed = false;
        for r in 0..b {
            let mut first_doc: Option<usize> = None;
            for i in 0..t {
                let own = visible(r, i, past + i);
                real[r * t + i] = if own { 1.0 } else { 0.0 };
                let start = (0..=past + i).find(|&j| visible(r, i, j)).unwrap_or(past + i);
                ids[r][i] = start as u32;
                if own && past == 0 {
                    packed |= *first_doc.get_or_insert(start) != start;
                }
            }
        }
        (real, if packed { Some(Segments { ids }) } else { None })
    }
}
