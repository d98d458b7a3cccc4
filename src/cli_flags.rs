//! Library errors name the option a caller set ("(option `max_rank`)"); the command line and the
//! server its flags configure say the flag instead. One table, used where an error leaves the
//! `lorafleet` binary (its `main`, the server's HTTP answers) and the trainer.

/// (library option, command-line flag).
const OPTION_FLAGS: &[(&str, &str)] = &[
    ("adapter_dir", "--adapter-dir"),
    ("allow_paths", "--allow-adapter-paths"),
    ("adapter_memory", "--adapter-memory"),
    ("max_rank", "--max-lora-rank"),
    ("kv_cache_bytes", "--kv-cache-bytes"),
    ("lm_head", "--lm-head"),
    ("act_dtype", "--act-dtype"),
    ("device", "--device"),
    ("threads", "--threads"),
    ("model_dir", "--model"),
    ("random_weights", "--random-weights"),
];

/// `msg` with every "option `NAME`" of the table written as its flag.
pub fn with_flag_names(msg: &str) -> String {
    let mut out = msg.to_string();
    for (option, flag) in OPTION_FLAGS {
        let needle = format!("option `{option}`");
        if out.contains(&needle) {
            out = out.replace(&needle, flag);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_flag_names;

    #[test]
    fn options_become_flags_and_other_text_stays() {
        assert_eq!(with_flag_names("rank 16 is above the maximum 8 (option `max_rank`)"), "rank 16 is above the maximum 8 (--max-lora-rank)");
        assert_eq!(
            with_flag_names("outside the adapter folder (option `adapter_dir`; option `allow_paths` loads from anywhere)"),
            "outside the adapter folder (--adapter-dir; --allow-adapter-paths loads from anywhere)"
        );
        assert_eq!(with_flag_names("max_rank without the word option"), "max_rank without the word option");
    }
}
