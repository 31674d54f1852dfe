module cluster-relay/tests/clients/go-github

go 1.24.0

require github.com/google/go-github/v75 v75.0.0

require github.com/google/go-querystring v1.1.0 // indirect
