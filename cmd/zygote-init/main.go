package main

import "github.com/zygote/zygote/guest/initd"

func main() { initd.Main() }
