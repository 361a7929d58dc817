// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3
// module (the upstream binary's main package lives in a module that is not
// meant to be required, so this is the same two lines on top of etcdmain).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
