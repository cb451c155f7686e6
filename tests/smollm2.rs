//! SmolLM2-135M-Instruct from its Q4_1 GGUF against transformers on the dequantized weights
//! (`tests/data/smollm2/golden.json`). Needs the GGUF: `scripts/fetch-smollm2.sh`.

mod common;

use common::{ids, next_token_logprobs, test_data};
use rand::SeedableRng;
use rlp::model;
use rlp::model::gguf::find_smollm2;
use rlp::tokenizer::Tok;
use serde_json::Value;

#[test]
fn smollm2_gguf_matches_transformers_logprobs_and_greedy_text() {
    let path = find_smollm2().unwrap();
    let loaded = model::weights::load(&path).unwrap();
    let m = loaded.model.detached().unwrap();
    let tok = Tok::from_tokenizer(loaded.tokenizer.unwrap(), true, "smollm2").unwrap();
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(test_data("smollm2/golden.json")).unwrap()).unwrap();
    for (name, p) in golden["prompts"].as_object().unwrap() {
        let want_ids = ids(&p["input_ids"]);
        assert_eq!(tok.encode(p["text"].as_str().unwrap()).unwrap(), want_ids, "{name}: tokenization");
        let logits = m.forward_logits(&[want_ids.clone()]).unwrap().squeeze(0).unwrap();
        let lp = next_token_logprobs(&logits, &want_ids).to_vec1::<f32>().unwrap();
        for (i, (a, b)) in lp.iter().zip(p["logprobs_next"].as_array().unwrap()).enumerate() {
            let b = b.as_f64().unwrap() as f32;
            assert!((a - b).abs() < 1e-3, "{name}: logprobs_next[{i}] {a} vs {b}");
        }
        let out = m.generate(&[want_ids], 24, None, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0)).unwrap().remove(0);
        assert_eq!(out, ids(&p["greedy_ids"]), "{name}: greedy continuation");
        assert_eq!(tok.decode(&out).unwrap(), p["greedy_text"].as_str().unwrap(), "{name}: greedy text");
    }
}
