//! The evaluation text: a short English story written for modelgate (by its authors, for this
//! repository, released under the project's Apache-2.0 licence), kept here as the one source of
//! `fixtures/text/eval.txt`.
//!
//! It trains the fixtures' byte-level BPE merges (see `tokenizer.rs`) and is the prompt text for
//! later parity runs. It holds prose, dialogue, numbers, a list, contractions and a few non-ASCII
//! characters (`−`, `°`, `—`, `é`, `£`) so that tokenizer round trips exercise multi-byte input.

use std::path::Path;

/// The evaluation text, byte for byte as written to `text/eval.txt`.
pub const EVAL_TEXT: &str = r##"The Keeper of Harrow Point

The lighthouse at Harrow Point stood on a shelf of black rock, forty-two metres above the water at high tide. Nobody remembered who had built it. The oldest record in the keeper's cupboard was a ledger from 1871, and even that began in the middle of a sentence, as if an earlier book had been lost or burned. Marta Ellery had kept the light for eleven years, and she liked to say that she had read the ledger so many times that she could recite the weather of any week you named.

"Try me," she said to the boy who had come with the supply boat. "Pick a year."

"Nineteen hundred and four," said the boy.

"March or November?"

"November."

"Wind from the north-east, force seven, rain on the sixth and the ninth, fog on the twelfth. The relief boat was three days late and the keeper, a man called Abel Fenn, wrote that he had eaten the last of the onions." She smiled. "He did not like onions. He wrote that too."

The boy laughed, but he did not quite believe her, so that evening she took the ledger down and showed him the page. There it was, in brown ink gone pale at the edges: wind NE 7, rain, rain, fog, and at the bottom, in a smaller hand, "Last of the onions. Thank God."

*

The work of a lighthouse is mostly the work of small things done at the right time. The lamp has to be lit half an hour before sunset and put out half an hour after sunrise. The lens has to be cleaned every morning, because salt settles on the glass like frost, and a dirty lens can lose a third of its light. The clockwork that turns the lens has to be wound every four hours, day and night, in winter and in summer. The fog signal has to be tested on the first Monday of each month. The log has to be kept.

Marta kept the log in a plain hand. She wrote the time, the wind, the sea, the visibility and the barometer, and then, if anything had happened, she wrote what had happened, in as few words as she could. Ship passing west, 14:20. Gannets diving off the reef. Rain gauge cracked; replaced. She did not write about herself. The log was not a diary. It was a record for whoever came after.

Still, there were days when the log could not hold everything. On those days she wrote letters, and most of the letters she never sent.

*

Dear Tomas,

You asked what I do all day. I think you imagine that I sit at the window and stare at the sea, waiting for a storm, like a painting of a lighthouse keeper. The truth is less romantic. Today I mended the gutter on the north side of the cottage, which had come away in the gale on Tuesday; I counted the paraffin drums (thirty-one full, four empty); I washed two shirts and a blanket; I cooked a pot of lentils that will last until Saturday; and I spent an hour on the gallery with a rag and a bottle of methylated spirit, cleaning the outside of the lantern glass. The gulls had been at it again.

I also read three chapters of the book you sent. I'm enjoying it, although I don't think the author has ever been to sea. Nobody in it is ever wet.

The weather is turning. The glass has fallen 11 millibars since noon, and the swell is coming in long and slow from the south-west, which usually means wind within a day. I have tied everything down that can be tied down. If you don't hear from me next week, it's only because the boat couldn't land.

With love,
M.

*

The storm arrived on the Thursday, a little before midnight. It began as a change in the sound of the sea: the steady hush of the waves on the reef became a deeper, irregular thud, like furniture being moved in a room below. Then the wind came, and with it the rain, driven sideways so hard that it rang against the lantern glass like gravel.

Marta was on watch. She wound the clockwork at midnight and again at four, and between those times she sat in the watch room with a mug of tea going cold beside her and listened. A lighthouse in a storm is never silent. The tower hums. The windows creak in their frames. Somewhere above, a loose ventilator cap rattles, and you tell yourself that you will fix it in the morning, and you know that you will forget.

At 02:40 she saw a light to the south, low on the water, where no light should be. She watched it for a full minute to be sure. It rose and fell and rose again: a small vessel, rolling badly, much closer to the reef than any sensible skipper would go on such a night.

She went down the stairs two at a time and rang the coastguard on the telephone in the kitchen. The line crackled, faded, and came back.

"Harrow Point," she said. "Vessel in difficulty, bearing one-eight-zero, about a mile and a half. Small, maybe ten or twelve metres. I can see a masthead light and nothing else. She's setting towards the reef."

"Understood, Harrow Point. The lifeboat is launching now. Can you keep her in sight?"

"I'll try."

She climbed back up to the gallery and stood in the lee of the lantern with the binoculars, the rain running down her sleeves and into her boots. The little light came and went. Once it vanished for so long that she was sure it had gone for good, and she found that she was holding her breath. Then it appeared again, further east, clear of the worst of the broken water.

The lifeboat reached it at 03:25. Marta watched the two lights come together and then, slowly, move away towards the harbour. At 04:00 she wound the clockwork. At 04:10 she wrote in the log: Vessel in difficulty to S, 02:40. Coastguard informed. Lifeboat on scene 03:25; vessel taken in tow. Wind SW 9, veering W. Heavy rain. Then she went down and made a fresh pot of tea, because the first one had gone quite cold.

*

Some facts about lighthouses, as Marta explained them to visitors in summer, when the boat brought day-trippers out from the mainland:

1. The light at Harrow Point flashes white twice every fifteen seconds. Every lighthouse on the coast has its own pattern, called its character, so that a navigator who sees a light at night can tell which one it is.
2. The lens is a Fresnel lens: not one thick piece of glass, but many rings of prisms arranged around the lamp. It weighs about two and a half tonnes and floats on a bath of mercury, so that a clock spring can turn it.
3. In clear weather the light can be seen from 22 nautical miles away. That is about 41 kilometres, or a little over 25 ordinary miles.
4. The fog signal uses compressed air. It sounds four times every sixty seconds and can be heard, on a still day, across the whole bay.
5. The tower has 117 steps. Marta counts them every time, and every time it is 117, but she counts them anyway.
6. The lowest temperature in the ledger is −14 °C, on 19 January 1963. The highest is 29 °C — in 1976, the summer the cistern ran dry and the keeper's café chairs were used for firewood in the autumn.

Visitors always asked the same questions. Did she get lonely? Was it haunted? What did she do if she got ill? She had answers ready for all of them. No more than anyone else. Only by gulls. Get better, or radio for the boat. What they never asked, and what she would have liked to tell them, was how beautiful the place was at five o'clock on a summer morning, with the sea flat as a plate and the light still turning, pale and unnecessary, against a sky the colour of milk.

*

Dear Tomas,

The boat came today with your parcel: coffee, two candles, a new pair of gloves (thank you; the old ones were more hole than glove), and the newspaper cuttings. The coffee — which cost you £4.20, I saw the label — is already half gone. I have read the one about the automatic lights three times. You're right that it will happen here eventually. The engineers have been talking about it for years. A light that runs itself needs no keeper, and a keeper costs money: wages, food, fuel, the boat every fortnight.

I'm not sure how I feel. Part of me is glad that nobody will have to sit up through nights like last Thursday. Part of me thinks that a machine would not have seen that little boat, or would have seen it and done nothing. A lamp can be made to turn without a person. It is harder to make it care.

But perhaps that is only what every keeper has said, since 1871 or before. Abel Fenn probably said it about the clockwork.

I've started a new ledger. The old one is full.

With love, as always,
M.

*

On the last page of the old ledger, beneath the final entry, Marta added a line she had been thinking about for a long time. It was not a record of the weather, and it was not really for whoever came after. It was closer to the kind of thing a person writes on the wall of a house before they leave it.

"Eleven years, four thousand and some nights. The light was never out."

Then she closed the book, put it on the shelf beside the others, and climbed the 117 steps to wind the clock.
"##;

/// A second story by the same authors under the same licence, never used for training or
/// calibration: the held-out text on which size-budget mixes and imatrix quantizations are
/// scored (`benches/target_bpw.sh`), byte for byte as written to `text/heldout.txt`.
pub const HELDOUT_TEXT: &str = r##"The Bridge at Calder Ford

For most of its history the town of Calder Ford had no bridge at all. The river was wide and shallow there, and for nine months of the year a farmer could lead a horse across it without wetting the saddle. In spring, when the snow melted in the hills, the water rose and turned brown, and anyone who wanted to reach the market on the far bank had to walk four miles upstream to the ferry at Hollin's Mill. People complained about the walk, but they complained about it the way they complained about the weather, as something that could not be changed and was therefore nobody's fault.

That changed in the autumn of 1894, when a cattle dealer named Josiah Penrose drowned trying to cross with a herd of heifers after three days of rain. He was not a popular man, and the town did not grieve him for long, but his widow was a woman of determination and some money. She wrote to the county surveyor, then to the member of parliament, then to the newspaper in the city. Her letters were polite, precise and impossible to ignore. Within two years the county had agreed to pay for half of a stone bridge, provided that the town raised the other half itself.

Raising the money took four more years. There were concerts in the chapel, a raffle of a pedigree ram, and a long argument in the parish council about whether the publican should be allowed to sell beer at the summer fair if part of his takings went to the bridge fund. The minutes of that meeting run to eleven pages. In the end the publican sold his beer, the Methodists held a separate fair on the other side of the green, and both sides claimed afterwards that they had raised more.

The engineer the county sent was a young man called Arthur Dunmore, who had built railway viaducts in the north and regarded a three-arch road bridge as a holiday. He lodged with the schoolmaster, walked the banks every morning with a notebook, and asked questions that nobody in Calder Ford had thought to ask. Where did the river run in a dry summer? How high had the worst flood reached, and how did anyone know? What was under the gravel?

The last question turned out to matter most. Dunmore sank trial pits on both banks and found that the gravel lay on a bed of soft blue clay, and that the clay went down a long way. A bridge built on the gravel alone would settle unevenly, and a settling arch cracks. He proposed to drive timber piles through the clay until they reached something firmer, and to build the piers on platforms of oak laid across the tops of the piles. The council, which had been promised a simple job, was alarmed by the cost. Dunmore explained, with a patience that several people remembered years later, that the alternative was to build the bridge twice.

Work began in the spring of 1900. A steam pile driver was brought by rail to the nearest station and hauled the last six miles by a team of eight horses, which took two days because the lane was narrow and the machine was not. Children were let out of school to watch it arrive. For the rest of the summer the town lived with the sound of it, a heavy thud every few seconds from six in the morning until dusk, so regular that people said they stopped hearing it and only noticed when it stopped.

The masons came from a quarry forty miles away and brought their own stone, a pale sandstone that weathered to the colour of bread crust. They were paid by the course, and they worked fast, but Dunmore checked every joint with a steel rule and sent back any stone whose face was more than a quarter of an inch out of true. There was a strike for three days in July, settled when the county agreed to pay for a second cart to bring water from the spring, because the river water made the men ill.

The centering for the arches, the wooden frames on which the stones are laid until the keystone locks them together, was built by a local carpenter named Eli Marsh. He had never built anything larger than a barn, and he studied Dunmore's drawings for a week before he cut a single timber. When the first arch was finished and the centering was eased down, the whole town came to watch. The arch dropped by less than the width of a finger, exactly as Dunmore had predicted, and Marsh went home and slept for fourteen hours.

The bridge was opened on the first of October 1901 by the widow Penrose, who cut a ribbon with her late husband's pocket knife and then walked across and back without stopping, although she was seventy-three years old and had a bad hip. There is a photograph of the ceremony in the town hall. Most of the faces in it are blurred, because people moved while the shutter was open, but hers is perfectly sharp.

How a Stone Arch Stands

An arch is a curious structure, because every part of it is trying to fall and none of it can. Each wedge-shaped stone, called a voussoir, is pushed down by its own weight and by the weight of everything above it. Because the stones are cut to fit the curve, that downward push turns into a sideways push against the neighbouring stones, and so on around the arch, until the forces arrive at the springing points at either end. There they must be resisted by the piers and abutments, which is why an arch needs solid ground at its feet more than almost any other kind of structure.

The line along which the force travels through the arch is called the line of thrust. As long as that line stays within the middle third of the thickness of the stones, every joint is in compression and the arch is stable. If the load changes, for instance when a heavy cart stands near one end, the line of thrust moves. If it moves outside the stones altogether, the joints open on one side, the arch forms hinges, and with enough hinges it becomes a mechanism and collapses. Engineers in the nineteenth century learned to draw the line of thrust by hand, with a set of triangles and a great deal of care, and the best of them could do it for a dozen load cases in an afternoon.

Masonry arches are remarkably forgiving. They tolerate small movements of their foundations, they do not rust, and they often carry loads many times greater than the ones they were designed for. Many bridges built for horses and carts now carry lorries of forty tonnes without complaint. Their weakness is water. Frost can split stones whose pores are full of it, and a river in flood can scour the gravel from around a pier until the foundation is undermined. Most old bridges that fail do not break from the top. They are eaten from below.

The Flood of 1947

The bridge at Calder Ford was tested properly only once. In March 1947, after the hardest winter anyone could remember, a sudden thaw and two days of warm rain sent the river up faster than it had ever been seen to rise. By the evening of the second day the water was within three feet of the crown of the middle arch, and it was carrying whole trees. People stood on the bank with lanterns and watched the trunks strike the cutwaters, the pointed ends of the piers that Dunmore had designed to split the current, and turn aside.

At about ten o'clock a barn roof came down the river in one piece and lodged against the upstream face of the bridge. Water piled up behind it, and the bridge began to act as a dam. The men who were watching could feel the parapet shaking under their hands. Someone ran for the fire brigade, which had a single motor pump and was of no use at all, and someone else ran for Eli Marsh's son, who had inherited his father's tools and his reputation. He arrived with two of his own sons, a coil of rope and a long-handled axe, and they went out along the parapet and cut the roof apart from above while the water roared underneath them. It took an hour. When the last section broke free and went under the arch, the level behind the bridge dropped by almost two feet in a minute, and the crowd on the bank cheered as if a goal had been scored.

The next morning the county surveyor came to inspect the damage and found almost none. A few stones were chipped, the parapet had lost its coping on one side, and a great deal of mud had been left on the road. The piers stood exactly where they had been set forty-six years before. When the surveyor's report reached the council, someone pointed out that the oak platforms under the piers had been the most expensive part of the original work and the subject of the longest argument. The minutes record that the point was received in silence.

Keeping an Old Bridge

A bridge that has stood for a century is not finished; it is maintained. The joints between the stones are filled with lime mortar, which is softer than the stone and meant to wear away first, so that the stones themselves are spared. Every few decades the mortar has to be raked out and renewed. If it is replaced with hard cement, as it often was in the middle of the twentieth century, the stones crack instead, because the cement does not give when the bridge moves with the seasons. Calder Ford was lucky. The county's works department in the nineteen sixties was run by a man who had learned his trade from a mason, and he refused to let cement near the bridge.

Vegetation is the other enemy. Seeds lodge in the joints, and a small tree growing from the side of a pier can, in twenty years, push a stone out of the face. Inspectors walk the bridge every spring and pull out whatever has started to grow. They also look at the river bed, because the scour holes that form around piers in a flood are often invisible from the bank and can only be found by wading or, in deeper water, by sending down a diver with a measuring pole. Since 1990 the inspections at Calder Ford have been done with a sonar survey from a small boat, which produces a coloured map of the river bed that nobody in the town can read but everyone agrees is very reassuring.

Traffic has changed more than the bridge. In 1901 the heaviest thing to cross it was a traction engine. By 1960 it carried buses, and by 1980 lorries from the quarry that had opened up the valley. The parapets were struck so often that the county replaced the coping stones with a harder granite, which is why the top of the bridge is grey while the rest of it is the colour of bread crust. In 2004 a weight limit was finally imposed and a bypass was built a mile downstream, a concrete beam bridge that is wider, flatter and, by general agreement, uglier. It was opened without ceremony. Nobody cut a ribbon.

What the Town Remembers

The bridge at Calder Ford appears on the town's sign, on the badge of the football club and on the label of a beer brewed in the old maltings, which sells well to visitors and is not much drunk by anyone who lives there. Every October the primary school walks across it in a line, and the children are told the story of the widow Penrose and her pocket knife. Most of them are more interested in the story of the barn roof, and some of the older ones claim to be related to the Marsh family, which is possible, because the Marsh family was large.

The engineer Arthur Dunmore never came back. He went on to build harbours in India and a dam in Egypt, and he died in 1938 in a nursing home in Eastbourne. Among his papers, which his daughter gave to a university library, there is a thin folder labelled Calder Ford. It contains his original calculations, a sketch of the pile driver, a bill from the schoolmaster for eleven months of board and lodging, and a letter from the widow Penrose thanking him for the bridge. At the bottom of the letter, in a different ink, Dunmore had written a single line: "She was right about the clay, too." Nobody knows what he meant. The most likely explanation is that she had told him, before he dug a single pit, that the ground by the river was soft, and that he had not believed her until he saw it for himself.

Bridges like the one at Calder Ford are easy to take for granted. They were built by people who are now forgotten, paid for by concerts and raffles and arguments about beer, and they have carried several generations to market and to school and home again without asking anything but a little mortar and an eye on the river. The best of them will outlast the roads that lead to them. When the bypass was being built, the engineer in charge was asked by a local reporter how long the new bridge was designed to last. He said one hundred and twenty years, and then, after a pause, he added that he hoped the old one would still be there to see it go.
"##;

/// Write `eval.txt` and `heldout.txt` into `dir` (the fixture tree's `text/` folder).
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("eval.txt"), EVAL_TEXT)?;
    std::fs::write(dir.join("heldout.txt"), HELDOUT_TEXT)
}
