module cluster-relay.local/tests/images/echo

go 1.26
