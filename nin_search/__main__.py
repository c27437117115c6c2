from nin_search.cli import main

raise SystemExit(main())
