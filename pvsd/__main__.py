from pvsd.cli import main

raise SystemExit(main())
