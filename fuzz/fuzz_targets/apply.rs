//! Arbitrary bytes drive a bounded sequence of commands (with clock jumps)
//! into `StateMachine::apply`; every invariant is checked after every
//! command, and a snapshot/restore twin must behave identically. Body:
//! `baton_jepsen::fuzz::apply_commands`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| baton_jepsen::fuzz::apply_commands(data));
