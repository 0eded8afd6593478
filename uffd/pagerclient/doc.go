// Package pagerclient is the daemon's side of the pager: Client speaks the
// control API over the unix socket, and Supervisor runs the pager as a child
// process, probes it, restarts it, and reports which sessions died with it.
//
// # Use
//
//	sup, err := pagerclient.NewSupervisor(pagerclient.Config{
//		SocketPath: "/run/zygote/pager.sock",
//		StateDir:   "/run/zygote/pager",
//		OnLost: func(l pagerclient.Lost) {
//			for _, id := range l.Sessions { killVM(id) } // they hang otherwise
//		},
//		OnFailed: func(s pagerapi.Session) { killVM(s.ID) }, // bad handshake or loop error
//	})
//	err = sup.Start(ctx)                 // adopts a running pager or starts `zygote pager`
//	s, err := sup.CreateSession(ctx, pagerapi.CreateSessionRequest{ID: id, MemoryPath: mem, CacheKey: key})
//	// hand s.SocketPath to the VMM; then sup.Client().WaitHandshake(ctx, id)
//	err = sup.CloseSession(ctx, id)      // after the VM stopped or detached
//	sup.Close()                          // daemon exit: leave the pager serving its VMs
//
// # Contract
//
// A pager that exits, or fails HealthFailures probes in a row (then it is
// killed), is reported once through OnLost with the sessions created through
// the Supervisor that were waiting or serving at last sight; then a new
// pager is started with backoff. The report may name a session that had just
// detached or failed, never miss one that needed the pager. While no pager
// runs, CreateSession fails with errdefs.ErrUnavailable. A tracked session
// the pager reports failed is handed to OnFailed once (on the next probe or
// Refresh) and untracked. Sessions created with the Client directly are not
// tracked.
//
// The pager runs in its own session (setsid) with its output in a log file,
// so it outlives the daemon; Start on a restarted daemon adopts it (watching
// it through a pidfd) with its live sessions instead of starting another.
//
// Goroutines: the monitor (stopped by Close/Shutdown) and, per started
// child, its reaper, which ends when the child does.
package pagerclient
