//! Shard ids from callers and file names: never panics; an accepted id is exactly its input and
//! holds no byte that could forge or colour a log line; a lossy id is always a valid id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_types::ShardId;

fuzz_target!(|text: &str| {
    if let Ok(id) = ShardId::new(text) {
        assert_eq!(id.as_str(), text);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()), "{text:?}");
    }
    let lossy = ShardId::from_name_lossy(text);
    assert!(ShardId::new(lossy.as_str()).is_ok(), "{:?} from {text:?}", lossy.as_str());
});
