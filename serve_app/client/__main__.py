from serve_app.client.cli import main

raise SystemExit(main())
