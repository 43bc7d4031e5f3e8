from serve_app.loadgen.cli import main

raise SystemExit(main())
