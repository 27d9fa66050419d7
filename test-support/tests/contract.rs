//! The store contract ([`gonest_session_test_support::contract`]) against every store: the
//! memory store, the Redis store, and the remote store through a daemon on each backend.

mod memory {
    gonest_session_test_support::store_contract!(
        gonest_session_test_support::contract::Memory::start()
    );
}

mod redis {
    gonest_session_test_support::store_contract!(
        gonest_session_test_support::contract::Redis::start()
    );
}

mod remote_on_memory {
    gonest_session_test_support::store_contract!(
        gonest_session_test_support::contract::Remote::on_memory()
    );
}

mod remote_on_redis {
    gonest_session_test_support::store_contract!(
        gonest_session_test_support::contract::Remote::on_redis()
    );
}
