//! Mutations of an input: byte flips, inserts, deletions, duplicated chunks, splices with
//! another corpus input, and tokens of the target's dictionary (keywords, JSON field names).

use rand::Rng;
use rand::rngs::StdRng;

/// Largest input a mutation produces.
pub const MAX_INPUT: usize = 1 << 20;

pub fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8], dictionary: &[&str]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        step(rng, &mut out, other, dictionary);
    }
    out.truncate(MAX_INPUT);
    out
}

fn step(rng: &mut StdRng, out: &mut Vec<u8>, other: &[u8], dictionary: &[&str]) {
    let at = |rng: &mut StdRng, len: usize| {
        if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        }
    };
    match rng.random_range(0..9) {
        // Flip a bit.
        0 if !out.is_empty() => {
            let i = at(rng, out.len());
            out[i] ^= 1 << rng.random_range(0..8);
        }
        // An interesting byte.
        1 if !out.is_empty() => {
            let i = at(rng, out.len());
            out[i] = [0, 0x7f, 0x80, 0xff, b'"', b'\\', b'/', b'.', b'\n', b'{']
                [rng.random_range(0..10)];
        }
        // Insert random bytes.
        2 => {
            let i = at(rng, out.len() + 1);
            let n = rng.random_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            out.splice(i..i, bytes);
        }
        // Delete a range.
        3 if !out.is_empty() => {
            let i = at(rng, out.len());
            let n = rng.random_range(1..=(out.len() - i).min(64));
            out.drain(i..i + n);
        }
        // Duplicate a chunk (repetition finds size and count limits).
        4 if !out.is_empty() => {
            let i = at(rng, out.len());
            let n = rng.random_range(1..=(out.len() - i).min(256));
            let chunk = out[i..i + n].to_vec();
            let times = rng.random_range(1..=8);
            for _ in 0..times {
                out.splice(i..i, chunk.iter().copied());
            }
        }
        // Splice in part of another input.
        5 if !other.is_empty() => {
            let j = at(rng, other.len());
            let n = rng.random_range(1..=(other.len() - j).min(512));
            let i = at(rng, out.len() + 1);
            out.splice(i..i, other[j..j + n].iter().copied());
        }
        // Truncate (torn writes, cut uploads).
        6 if !out.is_empty() => {
            let n = at(rng, out.len());
            out.truncate(n);
        }
        // A dictionary token.
        7 | 8 if !dictionary.is_empty() => {
            let token = dictionary[rng.random_range(0..dictionary.len())].as_bytes();
            let i = at(rng, out.len() + 1);
            if rng.random_bool(0.5) || out.is_empty() {
                out.splice(i..i, token.iter().copied());
            } else {
                let n = rng
                    .random_range(1..=(out.len() - i).clamp(1, 16))
                    .min(out.len() - i);
                out.splice(i..i + n, token.iter().copied());
            }
        }
        _ => {
            let b = rng.random();
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mutations_change_inputs_and_stay_bounded() {
        let mut rng = StdRng::seed_from_u64(1);
        let input = b"SELECT count(*) FROM fingerprints".to_vec();
        let changed = (0..100)
            .filter(|_| mutate(&mut rng, &input, b"other", &["WHERE"]) != input)
            .count();
        assert!(changed > 90, "{changed}");
        let big = vec![b'x'; MAX_INPUT];
        for _ in 0..20 {
            assert!(mutate(&mut rng, &big, &big, &[]).len() <= MAX_INPUT);
        }
    }
}
